"""Packaging lives in pyproject.toml; this file adds the compiled CPU Haar
transforms (``wavevit_mm/ops/csrc/haar.cpp``).

Build against the installed torch: ``pip install --no-build-isolation -e .``.
Where torch cannot be imported at build time, or the compiler fails, the
package installs without the extension and uses its pure-PyTorch transforms
(same results, slower on the CPU).
"""
from setuptools import setup


def compiled_ops():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print('wavevit_mm: torch is not importable at build time, so the '
              'compiled Haar transforms are skipped (install with '
              '--no-build-isolation to build them)')
        return {}
    class OptionalBuildExtension(BuildExtension):
        """A failed build leaves the pure-PyTorch transforms in charge."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # compiler missing or failing
                print(f'wavevit_mm: the compiled Haar transforms did not '
                      f'build ({error}); the package uses its pure-PyTorch '
                      f'transforms instead')

    import torch
    openmp = ['-fopenmp']  # at::parallel_for runs serially without it
    extension = CppExtension(
        'wavevit_mm.ops._haar', ['wavevit_mm/ops/csrc/haar.cpp'],
        # stringified by haar.cpp: wavelet.py ignores a build for another
        # torch (no quotes, which the ninja build would lose)
        define_macros=[('WAVEVIT_TORCH_VERSION', torch.__version__)],
        extra_compile_args=['-O3'] + openmp, extra_link_args=openmp,
        optional=True)  # in-place builds then skip copying a missing .so
    return dict(ext_modules=[extension],
                cmdclass={'build_ext': OptionalBuildExtension})


setup(**compiled_ops())
