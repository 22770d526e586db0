"""Run RecBole 1.2.1 SASRec on ml-100k (CPU, one thread) for `python -m benchmarks recbole_side_by_side`.

Runs in the RecBole virtual environment (its --recbole-python), NOT in crbr's: it imports recbole,
not crbr, and is run by path, not as part of the benchmarks package.

usage: RECBOLE_PYTHON benchmarks/recbole_sasrec_runner.py DEADLINE_MIN SPLIT_DUMP.json cfg1.yaml [cfg2.yaml ...]

Same logic as run_one.py of the RecBole peer folder (../shared/peers/recbole; anomaly-mode switch-off, wall-clock cap,
RESULT_JSON line at the end), plus:
  * torch.set_num_threads(1) before anything runs (set OMP_NUM_THREADS / MKL_NUM_THREADS=1 too);
  * after RecBole's data_preparation, the validation and test rows (user token, target item
    token, the item history window of the test row) are written to SPLIT_DUMP.json, so the
    caller can check that RecBole's leave-one-out split equals crbr's;
  * one `EPOCH_JSON {...}` line per validation: epoch, wall seconds since Trainer.fit started
    (measured right after validation, as crbr's elapsed_s), and the unrounded valid score.
"""
import json
import os
import resource
import sys
import time

t0 = time.time()
import torch  # noqa: E402

torch.set_num_threads(1)
import recbole.model.sequential_recommender  # noqa: E402,F401  (triggers sine.py's anomaly switch)

shipped_anomaly = torch.is_anomaly_enabled()
if os.environ.get("RB_KEEP_ANOMALY") != "1":
    torch.autograd.set_detect_anomaly(False)
import recbole.quick_start.quick_start as QS  # noqa: E402
import recbole.trainer.trainer as T  # noqa: E402

deadline_min, split_dump, cfgs = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
state = {"deadline_hit": False, "n_valid": 0, "t_start": None, "epoch": -1}

# ---- wall-clock cap + per-epoch timing (early_stopping runs right after each validation)
_orig_es = T.early_stopping


def es(value, best, cur_step, max_step, bigger=True):
    state["n_valid"] += 1
    el = time.time() - state["t_start"] if state["t_start"] else float("nan")
    print("EPOCH_JSON " + json.dumps({"epoch": state["epoch"], "n_valid": state["n_valid"], "wall_elapsed_s": el,
                                      "valid_score": float(value)}), flush=True)
    r = list(_orig_es(value, best, cur_step, max_step, bigger=bigger))
    if state["t_start"] and el > deadline_min * 60 and not r[2]:
        state["deadline_hit"] = True
        r[2] = True
    return tuple(r)


T.early_stopping = es

_orig_train_epoch = T.Trainer._train_epoch


def train_epoch(self, train_data, epoch_idx, *a, **k):
    state["epoch"] = epoch_idx
    return _orig_train_epoch(self, train_data, epoch_idx, *a, **k)


T.Trainer._train_epoch = train_epoch

_orig_fit = T.Trainer.fit


def fit(self, *a, **k):
    state["t_start"] = time.time()
    print(f"FIT_START {state['t_start'] - t0:.2f}s after process start", flush=True)
    return _orig_fit(self, *a, **k)


T.Trainer.fit = fit

# ---- dump the split RecBole actually uses
_orig_prep = QS.data_preparation


def data_preparation(config, dataset):
    train_data, valid_data, test_data = _orig_prep(config, dataset)
    uf, itf = dataset.uid_field, dataset.iid_field
    lf = itf + config["LIST_SUFFIX"]
    out = {}
    for name, dl in (("valid", valid_data), ("test", test_data)):
        feat = dl._dataset.inter_feat
        users = dataset.id2token(uf, feat[uf].numpy())
        items = dataset.id2token(itf, feat[itf].numpy())
        rows = {"users": [str(u) for u in users], "targets": [str(i) for i in items]}
        if name == "test":
            hist = feat[lf].numpy()
            lens = feat[config["ITEM_LIST_LENGTH_FIELD"]].numpy()
            rows["history"] = [[str(t) for t in dataset.id2token(itf, h[:n])] for h, n in zip(hist, lens)]
        out[name] = rows
    out["n_train_rows"] = len(train_data._dataset)
    out["item_num_incl_pad"] = int(dataset.item_num)
    with open(split_dump, "w") as f:
        json.dump(out, f)
    print(f"SPLIT_DUMP {split_dump} train_rows={out['n_train_rows']}", flush=True)
    return train_data, valid_data, test_data


QS.data_preparation = data_preparation

print(f"torch threads={torch.get_num_threads()} interop={torch.get_num_interop_threads()} "
      f"anomaly_shipped={shipped_anomaly} anomaly_now={torch.is_anomaly_enabled()}", flush=True)
res = QS.run_recbole(model="SASRec", dataset="ml-100k", config_file_list=cfgs)
out = {k: (dict(v) if hasattr(v, "items") else v) for k, v in res.items()}
out.update(model="SASRec", cfgs=cfgs, deadline_hit=state["deadline_hit"], epochs_run=state["n_valid"],
           torch_threads=torch.get_num_threads(), anomaly=torch.is_anomaly_enabled(),
           fit_and_test_wall_s=time.time() - state["t_start"] if state["t_start"] else None,
           wall_s_in_python=time.time() - t0,
           ru_maxrss_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print("RESULT_JSON " + json.dumps(out, default=float), flush=True)
