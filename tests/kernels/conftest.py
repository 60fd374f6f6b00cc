import os

import torch

# Without a GPU the Triton kernels run on CPU through Triton's interpreter. It is read when
# the kernels are defined, so it is set before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
