"""`python -m miras.eval.lm_eval_tasks [OUT_DIR]`: (re)writes the local tasks' .jsonl files."""
from . import main

main()
