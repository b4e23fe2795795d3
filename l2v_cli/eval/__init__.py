"""`l2v eval`: score an encoder on STS, retrieval, classification and clustering (see docs/eval.md).

    from l2v_cli.eval import evaluate
    evaluate("smollm2-135m@causal", "stsb,scifact", limit=100)
"""

from l2v_cli.eval.runner import compare, evaluate, parse_model_spec, run_mteb, write_json
from l2v_cli.eval.tasks import (DEFAULT_TASKS, KINDS, SHIPPED, ClassificationTask, ClusteringTask, RetrievalTask,
                                STSTask, Task, get_task, parse_tasks)

__all__ = ["evaluate", "compare", "parse_model_spec", "run_mteb", "write_json", "Task", "STSTask",
           "RetrievalTask", "ClassificationTask", "ClusteringTask", "get_task", "parse_tasks", "KINDS",
           "SHIPPED", "DEFAULT_TASKS"]
