"""Shrink a config's costly sizes so a few test steps are quick (shared by the DDP job and the GPU tier)."""


def shrink_config(node, z_samples: int, size: int) -> None:
    """In place: LARS's Z-sample counts at most ``z_samples``, K / T / Z samples per step at most ``size``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("num_z_val_samples", "num_z_eval_samples"):
                node[key] = min(value, z_samples)
            elif key in ("num_proposals", "T", "num_z_samples") and isinstance(value, int) and value > size:
                node[key] = size
            else:
                shrink_config(value, z_samples, size)
    elif isinstance(node, list):
        for item in node:
            shrink_config(item, z_samples, size)
