"""The chapter networks of d2l chapters 6–7 (built in the models issue)."""
