"""Record names in the messages between ServerApp and ClientApp, in one place for both sides."""

ARRAYS = "arrays"              # ArrayRecord: the model's state_dict
WIDE_STATS = "wide-stats"      # ArrayRecord of a train reply: bias table -> float64 [3, k] (row ids; gradient and curvature sums)
ROW_COUNTS = "row-counts"      # ArrayRecord of a train reply: id-indexed table -> int64 [2, k] (row ids; counts)
METRICS = "metrics"            # MetricRecord: "num-examples" plus flattened "task.metric" values
VAL_METRICS = "val-metrics"    # MetricRecord of an evaluate reply: the same, on the validation split
CONFIG = "config"              # ConfigRecord sent by the server ("server-round", ...)
RANKING = "ranking"            # key in an evaluate CONFIG: 1 = also compute top-K ranking metrics
MERCHANT = "merchant"          # ConfigRecord of every reply: which merchant answered
MERCHANT_ID = "merchant-id"    # key in MERCHANT, and the node-config key naming a SuperNode's merchant
NUM_EXAMPLES = "num-examples"  # FedAvg weight of shared parameters
