"""The one compiled part: the degree-capped merge of the edges agent's hot loop (``models/_graphc.c``); everything
else is configured in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("models._graphc", ["models/_graphc.c"], extra_compile_args=["-O2", "-Wall"])])
