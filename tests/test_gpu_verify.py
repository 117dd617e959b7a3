"""benchmarks/gpu_verify.py (``python -m benchmarks.gpu --verify``) without a
GPU: the stages are replaced by small Python commands that succeed, fail,
overrun their timeout or print what the real tools print, and the report
must record each one and still run the rest."""
import json
import sys

import pytest

from benchmarks import gpu_verify
from benchmarks.gpu_verify import Stage, parse_pytest, parse_training, verify

pytestmark = pytest.mark.kernel_free       # subprocesses print JSON: no kernel runs

PY = sys.executable
PYTEST_OUTPUT = ("....F.s\nFAILED tests/gpu/test_gpu_networks.py::test_gpu_matches_cpu[vgg11]\n"
                 "==== 1 failed, 5 passed, 1 skipped in 12.30s ====")
TRAIN_OUTPUT = ("epoch 3 ...\nloss 0.412, train acc 0.851, test acc 0.801\n"
                "11800.5 examples/sec on cuda:0\n")


def echo(text, code=0):
    return [PY, "-c", f"import sys; print({text!r}); sys.exit({code})"]


def fake_stages():
    ours = {"examples_per_s": 300.0, "memory_mb": 900.0, "host_step_s": 0.4,
            "kernel_calls_per_step": 247, "launches_per_step": 947}
    torch = {"examples_per_s": 12000.0, "memory_mb": 600.0, "host_step_s": 0.01,
             "kernel_calls_per_step": None}
    return [
        Stage("environment", echo(json.dumps({"gpu": "Fake H200", "python": "3.x"})), 30),
        Stage("probe", echo(json.dumps({"numba_cuda_kernels": False,
                                        "why_not": "AttributeError: row_stack"})), 30),
        Stage("pytest", echo(PYTEST_OUTPUT, code=1), 30, parse=parse_pytest),
        Stage("bench:resnet18:ours-gpu", echo(json.dumps(ours)), 30),
        Stage("bench:resnet18:torch-cuda", echo(json.dumps(torch)), 30),
        Stage("bench:alexnet:ours-gpu", [PY, "-c", "raise SystemExit('CUDA out of memory')"], 30),
        Stage("bench:alexnet:torch-cuda", [PY, "-c", "import time; time.sleep(30)"], 6),
        Stage("fashion_mnist", echo(TRAIN_OUTPUT), 30, parse=parse_training),
        Stage("never", echo("{}"), 30, skip="no data"),
    ]


def test_the_report_records_every_stage_and_survives_failures(tmp_path):
    report = verify(None, tmp_path, budget_s=120, stage_list=fake_stages())
    stages = report["stages"]
    assert {name: r["status"] for name, r in stages.items()} == {
        "environment": "ok", "probe": "ok", "pytest": "failed",
        "bench:resnet18:ours-gpu": "ok", "bench:resnet18:torch-cuda": "ok",
        "bench:alexnet:ours-gpu": "failed", "bench:alexnet:torch-cuda": "timeout",
        "fashion_mnist": "ok", "never": "skipped"}
    # a failing pytest run still has its summary parsed
    assert stages["pytest"]["result"]["counts"] == {"failed": 1, "passed": 5, "skipped": 1}
    assert stages["pytest"]["result"]["failed"] == [
        "tests/gpu/test_gpu_networks.py::test_gpu_matches_cpu[vgg11]"]
    assert stages["bench:alexnet:ours-gpu"]["error"] == "CUDA out of memory"
    assert stages["bench:alexnet:torch-cuda"]["note"] == "stopped after 6 s"
    assert stages["fashion_mnist"]["result"] == {
        "train_loss": 0.412, "train_acc": 0.851, "test_acc": 0.801,
        "examples_per_s": 11800.5, "device": "cuda:0"}
    assert report["benchmark"]["resnet18"]["ratio"] == 0.025
    assert report["benchmark"]["resnet18"]["memory_ratio"] == 1.5
    assert "error" in report["benchmark"]["alexnet"]["ours-gpu"]
    # one JSON file, the report itself; no temporary left
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("gpu-verify-") and files[0].endswith(".json")
    saved = json.loads((tmp_path / files[0]).read_text())
    assert saved["stages"] == json.loads(json.dumps(stages))
    text = "\n".join(gpu_verify.summary_lines(report))
    assert "Fake H200" in text and "NOT used (AttributeError: row_stack)" in text
    assert "resnet18: ours 300.0 ex/s, PyTorch 12000.0 ex/s, ratio 0.025" in text
    assert "247 kernel calls/step, 947 launches/step" in text
    assert report["benchmark"]["resnet18"]["ours-gpu"]["launches_per_step"] == 947


def test_stages_past_the_total_budget_are_skipped(tmp_path):
    slow = [Stage("slow", [PY, "-c", "import time; time.sleep(30)"], 60),
            Stage("after", echo("{}"), 60)]
    report = verify(None, tmp_path, budget_s=8, stage_list=slow)
    assert report["stages"]["slow"]["status"] == "timeout"
    assert report["stages"]["after"] == {
        "name": "after", "command": " ".join(slow[1].argv), "status": "skipped",
        "note": "the total time budget is spent"}
    assert report["seconds"] < 30


def test_the_real_stage_list_covers_the_issue(tmp_path):
    names = [s.name for s in gpu_verify.stages(None, tmp_path)]
    assert names[:4] == ["environment", "probe", "pytest", "launch_cost"]
    assert {n.split(":")[1] for n in names if n.startswith("bench:")} == {
        "lenet", "resnet18", "densenet", "googlenet", "alexnet"}
    fashion = gpu_verify.stages(None, tmp_path)[-3]
    assert fashion.name == "fashion_mnist" and "no --data-dir" in fashion.skip
    assert names[-5:-3] == ["cpu_scaling",   # issue 13's many-core sweep, after the GPU's,
                            "cpu_bandwidth"]  # and what memory gives those cores
    assert names[-2:] == ["cpu_op_scaling",   # and its split by op, if time is left,
                          "cpu_replicas"]     # and the bound without the split's meetings
    assert sum(s.timeout for s in gpu_verify.stages(None, tmp_path)) > 450  # the budget binds


def test_dry_run_runs_environment_and_probe_here(tmp_path):
    report = verify(None, tmp_path, budget_s=200, dry_run=True)
    assert report["stages"]["environment"]["status"] == "ok"
    probe = report["stages"]["probe"]
    assert probe["status"] == "ok" and set(probe["result"]) == {"numba_cuda_kernels", "why_not",
                                                           "fused_kernels", "fused_why_not"}
    assert {r["status"] for n, r in report["stages"].items()
            if n not in ("environment", "probe")} == {"skipped"}


def test_parsers_reject_output_without_their_lines():
    with pytest.raises(ValueError):
        parse_pytest("collected 0 items\n")
    with pytest.raises(ValueError):
        parse_training("Traceback ...\n")


# ---------------------------------------------------------------- cpu_scaling
@pytest.mark.parametrize("cores, threads", [(16, "1,2,4,8,16"), (12, "1,2,4,8,12"),
                                            (4, "1,2,4")])
def test_cpu_scaling_sweeps_the_threads_up_to_the_cores(tmp_path, cores, threads):
    stage = gpu_verify.cpu_scaling_stage(tmp_path, cores=cores)
    argv = stage.argv[stage.argv.index("benchmarks.cpu") + 1:]
    assert argv[argv.index("--threads") + 1] == threads
    assert argv[argv.index("--networks") + 1] == "resnet18" and stage.skip is None
    assert stage.plan([], seconds_left=stage.timeout - 1) is not None    # would be cut off
    assert stage.plan([], seconds_left=stage.timeout) is None


def test_cpu_scaling_is_skipped_on_two_cores(tmp_path):
    assert "2 cores" in gpu_verify.cpu_scaling_stage(tmp_path, cores=2).skip


def test_cpu_op_scaling_splits_one_thread_against_all_cores():
    stage = gpu_verify.cpu_op_scaling_stage(cores=16)
    argv = stage.argv[stage.argv.index("benchmarks.op_scaling") + 1:]
    assert argv[argv.index("--threads") + 1] == "1,16" and stage.skip is None
    assert argv[argv.index("--network") + 1] == "resnet18"
    assert int(argv[argv.index("--by-op") + 1]) > 0
    assert stage.plan([], seconds_left=stage.timeout - 1) is not None
    assert "2 cores" in gpu_verify.cpu_op_scaling_stage(cores=2).skip


@pytest.mark.parametrize("make_stage, table, summarised", [
    (gpu_verify.cpu_op_scaling_stage,
     ["| kind | ours 1 | ours 16 |", "|---|---|---|", "| convolution | 900 | 90 |",
      "| batch norm | 40 | 20 |"],
     "cpu_op_scaling: ok table of 2 kinds of op in the report"),
    (gpu_verify.cpu_replicas_stage,
     ["| network | engine | 1 thread ms |", "|---|---|---|", "| resnet18 | ours | 900 |",
      "| resnet18 | torch | 1000 |"],
     "cpu_replicas: ok table of 2 engines in the report"),
], ids=["cpu_op_scaling", "cpu_replicas"])
def test_the_cpu_breakdowns_keep_their_table_and_summarise_it(tmp_path, make_stage, table,
                                                             summarised):
    stage = make_stage(cores=16)
    stage.argv = [PY, "-c", "print('resnet18, batch 64'); print(" + repr("\n".join(table)) + ")"]
    result = verify(None, tmp_path, budget_s=300, stage_list=[stage] + fake_stages()[:2])
    assert result["stages"][stage.name]["result"] == {"table": table}
    assert summarised in "\n".join(gpu_verify.summary_lines(result))


def test_cpu_op_scaling_keeps_the_layers_table_apart(tmp_path):
    stage = gpu_verify.cpu_op_scaling_stage(cores=16)
    kinds = ["| kind | ours 1 | ours 16 |", "|---|---|---|", "| convolution | 900 | 90 |"]
    layers = ["| op | pass | shape |", "|---|---|---|", "| BatchNorm | forward | 64×64×24×24 |",
              "| ReLU | backward | 64×64×24×24 |"]
    printed = "\n".join(["resnet18, batch 64"] + kinds + ["", "ours, the 2 layers ..."] + layers)
    stage.argv = [PY, "-c", f"print({printed!r})"]
    result = verify(None, tmp_path, budget_s=300, stage_list=[stage] + fake_stages()[:2])
    assert result["stages"]["cpu_op_scaling"]["result"] == {"table": kinds, "layers": layers}
    summary = "\n".join(gpu_verify.summary_lines(result))
    assert ("cpu_op_scaling: ok table of 1 kinds of op in the report, and of the 2 layers "
            "that lose most") in summary
    with pytest.raises(ValueError):
        gpu_verify.parse_op_scaling("Traceback ...\n")


def test_cpu_op_scaling_keeps_where_the_threads_time_goes_and_sums_it_up(tmp_path):
    stage = gpu_verify.cpu_op_scaling_stage(cores=16)
    kinds = ["| kind | ours 1 | ours 16 |", "|---|---|---|", "| convolution | 900 | 90 |"]
    pool = ["| threads | step ms | outside the pool ms | inside the pool ms | jobs' time ms | "
            "threads busy inside | lost: serial ms | lost: waiting ms | lost: extra work ms |",
            "|---|---|---|---|---|---|---|---|---|",
            "| 1 | 1000.00 | 1000.00 | 0.00 | 0.00 |  | 0.00 | 0.00 | 0.00 |",
            "| 16 | 150.00 | 30.00 | 120.00 | 1600.00 | 0.83 | 28.12 | 20.00 | 39.38 |"]
    layers = ["| op | pass | shape |", "|---|---|---|", "| ReLU | backward | 64×64×24×24 |"]
    printed = "\n".join(["resnet18, batch 64"] + kinds
                        + ["", "ours, where the threads' time goes (ms per step)"] + pool
                        + ["", "ours, the 1 layers that lose most"] + layers)
    stage.argv = [PY, "-c", f"print({printed!r})"]
    result = verify(None, tmp_path, budget_s=300, stage_list=[stage] + fake_stages()[:2])
    assert result["stages"]["cpu_op_scaling"]["result"] == {"table": kinds, "pool": pool,
                                                           "layers": layers}
    summary = "\n".join(gpu_verify.summary_lines(result))
    assert ("lost serial 28.12, waiting 20.00, extra work 39.38 ms on 16 threads") in summary


def test_cpu_replicas_runs_as_many_replicas_as_cores_eight_images_each():
    stage = gpu_verify.cpu_replicas_stage(cores=16)
    argv = stage.argv[stage.argv.index("benchmarks.replicas") + 1:]
    assert argv[argv.index("--threads") + 1] == "16" and stage.skip is None
    assert argv[argv.index("--batch") + 1] == "128"
    assert argv[argv.index("--networks") + 1] == "resnet18"
    assert stage.plan([], seconds_left=stage.timeout - 1) is not None
    assert "2 cores" in gpu_verify.cpu_replicas_stage(cores=2).skip


def test_cpu_bandwidth_streams_at_the_sweeps_thread_counts():
    stage = gpu_verify.cpu_bandwidth_stage(cores=16)
    argv = stage.argv[stage.argv.index("benchmarks.bandwidth") + 1:]
    assert argv[argv.index("--threads") + 1] == "1,2,4,8,16" and stage.skip is None
    sizes = [float(mb) for mb in argv[argv.index("--sizes") + 1].split(",")]
    assert min(sizes) <= 1 and max(sizes) >= 256      # within a core's caches, past any L3
    assert stage.plan([], seconds_left=stage.timeout - 1) is not None
    assert "2 cores" in gpu_verify.cpu_bandwidth_stage(cores=2).skip


def test_cpu_bandwidth_keeps_its_table_and_summarises_the_speed_ups(tmp_path):
    stage = gpu_verify.cpu_bandwidth_stage(cores=16)
    table = ["| working set | 1 thread GB/s | 16 threads GB/s | speed-up 1→16 |",
             "|---|---|---|---|", "| 1 MB | 60.0 | 900.0 | 15.00 |",
             "| 256 MB | 15.0 | 90.0 | 6.00 |"]
    printed = "\n".join(["16 CPUs; caches: L1d 48K, L2 2048K, L3 30720K"] + table)
    stage.argv = [PY, "-c", f"print({printed!r})"]
    result = verify(None, tmp_path, budget_s=300, stage_list=[stage] + fake_stages()[:2])
    assert result["stages"]["cpu_bandwidth"]["result"] == {
        "caches": "16 CPUs; caches: L1d 48K, L2 2048K, L3 30720K", "table": table,
        "speed_up": {"1 MB": 15.0, "256 MB": 6.0}}
    assert ("cpu_bandwidth: ok speed-up from 1 thread to all 1 MB 15.00x, 256 MB 6.00x"
            in "\n".join(gpu_verify.summary_lines(result)))
    with pytest.raises(ValueError):
        gpu_verify.parse_bandwidth("Traceback ...\n")


def test_the_replicas_parser_rejects_output_without_a_table():
    with pytest.raises(ValueError):
        gpu_verify.parse_replicas("Traceback ...\n")


def cpu_report(rates):
    """A benchmarks.cpu --out report: {threads: (ours, torch)} examples/s, each
    run keeping as many cores busy as it has threads, ours 0.5 fewer (the
    worker's records from before cores_busy lack it: see the 1-thread runs)."""
    def run(rate, threads, less):
        r = {"examples_per_s": rate, "peak_rss_mb": 500.0, "baseline_rss_mb": 300.0}
        return r if threads == 1 else dict(r, cores_busy=threads - less)
    return {"networks": [{"name": "resnet18", "batch": 64, "threads": t,
                          "runs": {"numba": [run(ours, t, 0.5)], "torch": [run(torch, t, 0)]}}
                         for t, (ours, torch) in rates.items()]}


def test_cpu_scaling_reads_the_sweep_and_summarises_it(tmp_path):
    stage = gpu_verify.cpu_scaling_stage(tmp_path, cores=16)
    report = cpu_report({1: (45.0, 48.0), 16: (210.0, 300.0)})
    out = tmp_path / "cpu-scaling.json"
    stage.argv = [PY, "-c", f"import pathlib; pathlib.Path({str(out)!r}).write_text("
                            f"{json.dumps(report)!r})"]
    result = verify(None, tmp_path, budget_s=200, stage_list=[stage] + fake_stages()[:2])
    assert result["stages"]["cpu_scaling"]["result"] == {"resnet18": {
        "1": {"ours": 45.0, "torch": 48.0, "ratio": 0.938,
              "ours_cores_busy": None, "torch_cores_busy": None},
        "16": {"ours": 210.0, "torch": 300.0, "ratio": 0.7,
               "ours_cores_busy": 15.5, "torch_cores_busy": 16}}}
    summary = "\n".join(gpu_verify.summary_lines(result))
    assert ("resnet18 16 threads ours 210.0 / PyTorch 300.0 examples/s = 0.70x "
            "(cores busy 15.5 / 16.0)") in summary
    assert "resnet18 1 threads ours 45.0 / PyTorch 48.0 examples/s = 0.94x," in summary


# ---------------------------------------------------------------- --d2l NAME…
def fashion_dir(tmp_path):
    for name in gpu_verify.FASHION_FILES:
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_d2l_stages_train_at_the_registry_settings_on_cuda(tmp_path):
    import models
    data = fashion_dir(tmp_path)
    found = {s.name: s for s in gpu_verify.d2l_stages(["nin", "lenet", "alexnet_cifar10"],
                                                       data, tmp_path / "out")}
    assert list(found) == ["d2l:nin", "d2l:lenet", "d2l:alexnet_cifar10"]
    nin = found["d2l:nin"]
    spec = models.spec("nin")
    command = " ".join(nin.argv[1:])
    assert command.startswith("-m tinygrad_cnn train nin --device cuda")
    for option in (f"--epochs {spec.num_epochs}", f"--lr {spec.lr}",
                   f"--batch-size {spec.batch_size}", f"--resize {spec.resize}",
                   f"--data-dir {data}"):
        assert option in command
    assert nin.skip is None
    assert "--resize" not in found["d2l:lenet"].argv          # LeNet keeps 28×28
    assert found["d2l:alexnet_cifar10"].skip.startswith("d2l trains it on cifar10")
    # no data: skipped with the reason, as the fashion_mnist stage
    assert "no --data-dir" in gpu_verify.d2l_stages(["lenet"], None, tmp_path)[0].skip
    # the figures and the settings they were made at
    result = nin.parse(TRAIN_OUTPUT)
    assert result["test_acc"] == 0.801 and result["examples_per_s"] == 11800.5
    assert result["settings"]["lr"] == spec.lr and result["settings"]["resize"] == spec.resize


def test_d2l_run_that_does_not_fit_the_budget_is_skipped_not_cut_off(tmp_path):
    ours = {"examples_per_s": 1000.0, "memory_mb": 1.0}
    # at 1,000 examples/s, 10 epochs of 60,000 (+ tests) take about 10 minutes
    estimate = gpu_verify.d2l_estimate_s("lenet", 10, [
        {"name": "bench:lenet:ours-gpu", "status": "ok", "result": ours}])
    assert estimate == pytest.approx(gpu_verify.D2L_START_S + 10 * (60_000 + 10_000 / 3) / 1000)

    def d2l_stage(name):
        return Stage(f"d2l:{name}", echo(TRAIN_OUTPUT), 10 ** 6, parse=parse_training,
                     plan=gpu_verify._d2l_plan(name, 10))

    listed = [Stage("bench:lenet:ours-gpu", echo(json.dumps(ours)), 30), d2l_stage("lenet"),
              d2l_stage("nin")]        # nin: no benchmark figure, so no estimate
    report = verify(None, tmp_path, budget_s=120, stage_list=listed)
    skipped = report["stages"]["d2l:lenet"]
    assert skipped["status"] == "skipped"
    assert "needs about" in skipped["note"] and "raise --budget" in skipped["note"]
    assert report["stages"]["d2l:nin"]["status"] == "ok"      # gets the rest of the budget
    # with the budget it needs, the same run goes ahead
    listed = [Stage("bench:lenet:ours-gpu", echo(json.dumps(ours)), 30), d2l_stage("lenet")]
    report = verify(None, tmp_path, budget_s=estimate + 60, stage_list=listed)
    assert report["stages"]["d2l:lenet"]["status"] == "ok"
    assert report["stages"]["d2l:lenet"]["result"]["test_acc"] == 0.801


def test_d2l_dry_run_shows_what_it_would_run(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    data = fashion_dir(tmp_path / "data")
    code = gpu_verify.main(["--dry-run", "--d2l", "lenet", "googlenet", "--data-dir",
                            str(data), "--out-dir", str(tmp_path / "out"), "--budget", "200"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("lenet", "googlenet"):
        line = next(l for l in out.splitlines() if l.strip().startswith(f"would run d2l:{name}:"))
        assert f"tinygrad_cnn train {name} --device cuda" in line
    report = json.loads(next((tmp_path / "out").glob("gpu-verify-*.json")).read_text())
    assert report["stages"]["d2l:googlenet"]["status"] == "skipped"
    assert report["stages"]["d2l:googlenet"]["note"] == "dry run"


def test_d2l_unknown_network_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_verify.main(["--dry-run", "--d2l", "nosuchnet"])
    assert exc.value.code == 2
    assert "unknown networks nosuchnet" in capsys.readouterr().err
