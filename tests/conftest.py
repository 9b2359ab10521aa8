import os

# Tests run the eager rasteriser by default (compiling kernels costs tens of seconds per process);
# test_render.py checks the compiled kernels explicitly.
os.environ.setdefault("STEINSPLAT_COMPILE", "0")
