"""loopline from Python: a credit-default classifier's loop, stage by stage, in a temporary project folder.

The data is ISLP's Default table (10,000 credit card accounts: default, student, balance, income), shipped
inside the ISLP package, read as two batches of 5,000 accounts. Nothing is downloaded at run time.

    python examples/python_api.py            # prints each stage's result
    python examples/python_api.py --keep     # ... and keeps the project folder for a look afterwards

In a notebook, each result (``env.train()``, ``env.score()``, ``env.monitor()``, ``env.status()`` ...) renders
as an HTML table of its key figures.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import textwrap
from pathlib import Path

import loopline

PROJECT = textwrap.dedent(
    """\
    project: credit_default
    model:
      name: credit_default
      task: classification
      target: default
      positive_label: true          # DuckDB reads the CSV's Yes/No as booleans
      keys: [id]
    sources:
      accounts:
        kind: sql
        files: {accounts: pkg://ISLP/data/Default.csv}
        # $part 1 = accounts 1-5000, $part 2 = accounts 5001-10000; one batch each
        query: |
          SELECT * FROM (
            SELECT CAST(row_number() OVER () AS BIGINT) AS id, "default", student, balance, income,
                   printf('part-%d', CAST($part AS INTEGER)) AS _batch_id
            FROM accounts
          ) WHERE (id - 1) // 5000 + 1 = CAST($part AS INTEGER)
    contract:
      columns:
        id: {type: int, nullable: false, unique: true}
        default: {type: bool, nullable: false}
        student: {type: bool, nullable: false}
        balance: {type: float, nullable: false, min: 0}
        income: {type: float, nullable: false, min: 0}
    training:
      estimator: sklearn.ensemble.HistGradientBoostingClassifier
      params: {max_iter: 50, random_state: 0}
      metrics: [roc_auc, accuracy]
      pip_requirements: [scikit-learn]
    gate:
      thresholds: {roc_auc: {min: 0.8}}
      prediction_range: [0, 1]
    batch:
      input: features
    monitoring:
      performance: {metric: roc_auc, max_degradation: 0.1}
    environments:
      dev: {}
    """
)


def main(folder: Path) -> None:
    (folder / "loopline.yaml").write_text(PROJECT)
    env = loopline.open(folder, env="dev")
    print(env)

    first = env.ingest("accounts", part=1)  # ingest -> validate -> features
    print("ingest:", first.summary())

    trained = env.train()  # train, register in MLflow, run the gate
    print(f"train: version {trained.version}, test roc_auc {trained.metrics['test_roc_auc']:.3f}, "
          f"gate {trained.gate.verdict}")  # fmt: skip
    event = env.promote()  # @champion -> the version that passed the gate (audited)
    print(f"promote: {event.model} @champion -> version {event.to_version}")  # type: ignore[union-attr]

    second = env.ingest("accounts", part=2)
    print("ingest:", second.summary())
    scored = env.score()  # @champion scores the features table into `predictions`
    print(f"batch: {scored.rows} rows scored by v{scored.model_version} into predictions")

    checked = env.monitor(window="1d")  # drift, performance, range of the last day's predictions
    print(f"monitor: {checked.verdict} - {checked.message}")

    share = env.sql(  # read-only SQL over every table of the environment -> pandas
        "select f.student, count(*) as accounts, avg(p.probability) as mean_probability "
        "from predictions p join features f using (id) group by all order by 1"
    )
    print(share.to_string(index=False))
    print("features rows:", len(env.table("features")))
    report = env.status()
    print(f"status: champion v{report.champion.version if report.champion else '-'}, "
          f"last runs: {', '.join(f'{job} {r.status}' for job, r in report.runs.items())}")  # fmt: skip
    html = report._repr_html_()  # what a notebook shows
    print(f"status as HTML: {len(html)} characters")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loopline-python-api-"))
    try:
        main(tmp)
    finally:
        if args.keep:
            print(f"project kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
