"""The native accelerator, built by ``pip install .`` (everything else is in pyproject.toml).

gcc is on every HPC node; no other toolchain is asked for. The extension is optional: where it cannot be
built, the install goes on and finalize runs the pure-Python path, with the same outcomes, and says so.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "axlstateless._fastcore",
            ["axlstateless/_fastcore.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
            optional=True,
        )
    ]
)
