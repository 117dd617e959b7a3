"""The ops, one file per kind.  Each is a Function (forward + hand-written
backward) and a lowercase function that checks its arguments and calls it."""
