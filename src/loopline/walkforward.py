"""Walk-forward (rolling-origin) evaluation of a candidate for the gate (``gate.walk_forward: K``).

One held-out slice judges a candidate by one fit at one origin: under drift that verdict is noisy (a month
refused by a hair, the next accepted). Walk-forward cuts the held-out newest rows, in time order, into K
consecutive folds; fold k is predicted by the candidate's parameters fit on every labelled row before it
(training + validation rows + folds 0..k-1), so each prediction is made as production would have made it at
that moment. The gate then compares the pooled predictions with the champion's on the same rows (the champion
trained on none of them). It costs K fits instead of one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopline.labels import LabelSpec
    from loopline.runtime import Output
    from loopline.training_data import Prepared


def walk_forward(
    trainer: Any, p: Prepared, params: dict[str, Any], spec: LabelSpec, notes: list[str], folds: int
) -> Output | None:
    """The candidate's pooled predictions on ``p.test`` (in its order), fold by fold; None (with a note) when
    there are fewer test rows than folds."""
    import numpy as np
    import pandas as pd

    from loopline.runtime import Output
    from loopline.training import _output

    if len(p.test) < folds:
        notes.append(f"gate.walk_forward: {len(p.test)} test row(s) for {folds} folds; one evaluation fit instead")
        return None
    base = pd.concat([p.train, p.valid], ignore_index=True)
    parts: list[Output] = []
    for idx in np.array_split(np.arange(len(p.test)), folds):
        before = pd.concat([base, p.test.iloc[: int(idx[0])]], ignore_index=True)
        model = trainer.refit(p, params, spec, notes, before)
        parts.append(_output(model, p.test.iloc[idx][p.input_columns], spec))
    predictions = np.concatenate([np.asarray(o.predictions) for o in parts])
    probas = [o.proba for o in parts if o.proba is not None]
    proba = np.concatenate(probas) if len(probas) == len(parts) else None
    return Output(predictions, proba)
