"""pitlake: point-in-time training sets from a pitlake server, in Python.

A client of ``pitlake serve`` over Arrow Flight SQL (ADBC's driver)::

    import pitlake

    fs = pitlake.connect("grpc+tls://features.internal:50051", username="alice", password=pw)
    ts = fs.training_set(labels=orders_df, at="order_ts",
                         features=["driver_stats.*", "SERVICE churn_v1"])
    df = ts.to_pandas()
    manifest = fs.export(ts, to="s3://ml/exports/churn.parquet")
    fs.reproduce(manifest)

See python/README.md for the whole tour, and :mod:`pitlake.errors` for what can go wrong.
"""

from . import errors
from ._hash import ContentHash, content_hash
from ._results import Progress, Result, TrainingSet
from ._version import __version__
from .client import Client, connect

__all__ = [
    "Client",
    "ContentHash",
    "Progress",
    "Result",
    "TrainingSet",
    "__version__",
    "connect",
    "content_hash",
    "errors",
]
