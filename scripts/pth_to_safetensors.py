#!/usr/bin/env python3
"""Convert an official HRNet checkpoint (.pth, a pickled state_dict) to safetensors.

  python3 scripts/pth_to_safetensors.py pose_hrnet_w32_256x192.pth w32.safetensors

Keys are kept as they are (hrnet also accepts the `module.` prefix of DataParallel);
a checkpoint saved as {"state_dict": ...} is unwrapped. Needs torch and safetensors.
"""

import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, sys.argv[2])
    print(f"wrote {len(tensors)} tensors to {sys.argv[2]}")


if __name__ == "__main__":
    main()
