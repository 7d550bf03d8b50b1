"""Multi-host GAN: two real processes on localhost (1 CPU device each, gloo collectives)
train a tiny Stage1 crVAE-GAN and end where one process with two devices and the same
global batch ends: the same generator, MI head, discriminator and optimizer states, and
the same accuracy-gated discriminator decisions at every step (the gate reads the
accuracy on the global batch, BatchNorm its statistics over the global batch)."""

import json

import numpy as np

from test_multiprocess import _report, _run

# The tiny discriminator's accuracy stays at 0.5 (every logit of one sign) until it has
# learnt for a while: at lr 1e-2 it reaches 0.625 at step 14, so with the gate at 0.55 its
# update is applied at steps 1-13 and skipped at step 14 (asserted below).
STEPS = 14
LEARNING_RATE = 1e-2
MAX_D_ACCURACY = 0.55
# One process of a run: join (if there are several), train the tiny crVAE-GAN for STEPS
# steps of a global batch of 8 (4 images per device; one checkpoint, at the end), restore
# it replicated over the mesh and save every leaf of the state.
CHILD = f"""
import json, os, sys, time
t0 = time.time()
process_id, num_processes = int(sys.argv[1]), int(sys.argv[2])
port, workdir = sys.argv[3], sys.argv[4]
from crvae_jax import distributed
if num_processes > 1:
  distributed.initialize(f"127.0.0.1:{{port}}", num_processes, process_id, timeout_s=60)
import jax
import numpy as np
from test_rgb_training import tiny_rgb_config, tiny_source
from crvae_jax import sharding
from crvae_jax.families import stage1
from crvae_jax.train import engine
config = tiny_rgb_config("crvaegan", num_devices=None, max_d_accuracy={MAX_D_ACCURACY},
                         steps={STEPS})
config.optim.learning_rate = {LEARNING_RATE}
config.train.checkpoint_every_steps = {STEPS}
source = tiny_source()
stage1.train(config, workdir, source=source)
family = stage1.Family(config, source=source, mesh=sharding.make_mesh())
state, step = engine.restore_trained(family, workdir, replicated=True)
leaves = [sharding.to_host(x) for x in jax.tree.leaves(state)]
np.savez(os.path.join(workdir, f"variables_{{process_id}}.npz"), *leaves)
with open(os.path.join(workdir, f"report_{{process_id}}.json"), "w") as f:
  json.dump({{"step": step, "devices": len(jax.devices()),
             "local_devices": jax.local_device_count(), "processes": jax.process_count(),
             "leaves": [jax.tree_util.keystr(k) for k, _ in
                        jax.tree_util.tree_flatten_with_path(state)[0]],
             "wall_s": time.time() - t0}}, f)
"""


def _train_log(workdir) -> list:
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


def test_two_processes_train_the_gan_like_one_process_with_two_devices(tmp_path):
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  wall_one, _ = _run(one, num_processes=1, devices_per_process=2, child=CHILD)
  wall_two, _ = _run(two, num_processes=2, devices_per_process=1, child=CHILD)
  print(f"\nwall time: 1 process x 2 devices {wall_one:.1f} s; 2 processes x 1 device "
        f"{wall_two:.1f} s")

  reference, ref_leaves = _report(one, 0)
  assert (reference["processes"], reference["devices"], reference["step"]) == (1, 2, STEPS)
  names = reference["leaves"]
  assert any(".gen" in n for n in names) and any(".disc" in n for n in names)
  assert any(".mi" in n for n in names) and any(".d_opt" in n for n in names)
  for process_id in (0, 1):
    report, leaves = _report(two, process_id)
    assert (report["processes"], report["devices"], report["local_devices"]) == (2, 2, 1)
    assert report["step"] == STEPS and report["leaves"] == names
    for name, a, b in zip(names, leaves, ref_leaves):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)

  # The gate's decision at every step is the single-process one, and it went both ways.
  log_one, log_two = _train_log(one), _train_log(two)
  assert [r["step"] for r in log_two] == [r["step"] for r in log_one] == list(
      range(1, STEPS + 1))
  skipped = [r["d_update_skipped"] for r in log_one]
  assert [r["d_update_skipped"] for r in log_two] == skipped
  assert 0.0 in skipped and 1.0 in skipped, skipped
  for key in ("loss_g", "loss_d", "d_accuracy", "recon_mse"):
    np.testing.assert_allclose([r[key] for r in log_two], [r[key] for r in log_one],
                               rtol=1e-5, atol=1e-6, err_msg=key)
