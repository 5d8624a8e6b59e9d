"""The lmms-eval glue: task data, per-item records and metrics, batched in-run judging, the lmms_eval command. Imports every library layer below it."""
