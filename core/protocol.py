"""Names shared by ServerApp and ClientApp, in one place for both sides: message records, their keys,
and the node-config and run-config keys a node reads."""

ARRAYS = "arrays"              # ArrayRecord: the model's state_dict (in a train reply, as core/update_codec.py encodes it)
WIDE_STATS = "wide-stats"      # ArrayRecord of a train reply: bias table -> float64 [3, k] (row ids; gradient and curvature sums)
EMBEDDING_STATS = "embedding-stats"  # ArrayRecord of a curvature reply: embedding table -> float64 [k, 1 + d + d * d]
                               # (per row its id, gradient and curvature sums: tasks/embedding_newton.py)
ROW_COUNTS = "row-counts"      # ArrayRecord of a train reply: id-indexed table -> int64 [2, k] (row ids; counts)
TABLE_ROWS = "table-rows"      # ArrayRecord of a sparse train reply: id-indexed table -> its ROW_COUNTS rows' values
ROW_TOTALS = "row-totals"      # ArrayRecord of a train request: embedding table -> float32 [rows], labelled rows per row
                               # over every merchant counted so far (server_app/aggregation.py RowTotals)
SCALES = "scales"              # ArrayRecord of an int8 train reply: array name -> float32 scales (core/update_codec.py)
METRICS = "metrics"            # MetricRecord: "num-examples" plus flattened "task.metric" values
VAL_METRICS = "val-metrics"    # MetricRecord of an evaluate reply: the same, on the validation split
CONFIG = "config"              # ConfigRecord sent by the server ("server-round", ...)
SERVER_ROUND = "server-round"  # key in CONFIG
RANKING = "ranking"            # key in an evaluate CONFIG: 1 = also compute top-K ranking metrics
PLAN = "plan"                  # key in CONFIG: the run plan (tasks, label stats) as JSON, the same for all
MERCHANT_INDEX = "merchant-index"  # key in a train CONFIG: this node's merchant's place (its batch-order seed)
MERCHANT = "merchant"          # ConfigRecord of every train/evaluate reply: which merchant answered
MERCHANT_ID = "merchant-id"    # key in MERCHANT, and the node-config key naming a SuperNode's merchant
NUM_EXAMPLES = "num-examples"  # FedAvg weight of shared parameters
WEIGHT_BOUND = "weight-bound"  # key in a SecAgg+ round's FitIns config: the public bound weights are divided by

IDENTIFY = "identify"          # query action ("query.identify"): the node answers MERCHANT with its MERCHANT_ID only
REFIT = "refit"                # query action ("query.refit"): the node sums the REFIT_PART's statistics of its train and
                               # validation rows at the model sent (global biases left out: tasks/wide.py refit_statistics)
REFIT_PART = "refit-part"     # key in a refit query's CONFIG: which statistics it asks for, one of:
REFIT_BIAS = "bias"            # WIDE_STATS of the per-id biases (refit_biases)
REFIT_EMBEDDING = "embedding"  # EMBEDDING_STATS of the embedding rows (refit_embeddings: tasks/embedding_newton.py)
CURVATURE = "curvature"        # query action ("query.curvature"): the node sums EMBEDDING_STATS at the model sent
SETUP = "setup"                # ConfigRecord of a setup (query) reply: the node's data summary, flat
SETUP_ERROR = "error"          # key in SETUP when the node cannot take part: one line saying why
ORACLE = "oracle"              # MetricRecord of a setup reply: ground truth scored on its test split

DATA_PATH = "data-path"        # node config: the merchant's interactions file on its own machine
PARTITION_ID = "partition-id"  # node config in simulation (set by Flower) ...
NUM_PARTITIONS = "num-partitions"
PARTITIONS = "partitions"      # ... and the run-config key of the manifest mapping partition ids to files
