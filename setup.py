"""Packaging for txdmq, the ``dmq`` package and its ``twistd dmq`` plugin."""

import re

from setuptools import find_packages, setup

VERSION = re.search(r'^__version__ = "([^"]+)"', open("dmq/__init__.py", encoding="utf-8").read(), re.M).group(1)

setup(
    name="txdmq",
    version=VERSION,
    description="Kamailio-compatible DMQ (distributed message queue) nodes for Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=[*find_packages(include=["dmq", "dmq.*"]), "twisted.plugins"],
    package_data={"twisted.plugins": ["dmq_plugin.py"]},
    install_requires=[
        "twisted>=23.10",
        "service_identity>=23.1",
        "pyOpenSSL>=23.2",
        "dnspython>=2.4",
        "prometheus_client>=0.17",
        "tomli>=2.0; python_version < '3.11'",
    ],
    extras_require={
        "conch": ["twisted[conch]>=23.10"],
        "bench": ["matplotlib>=3.7"],
        "dev": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "hypothesis>=6.80",
            "mypy>=1.5; platform_python_implementation == 'CPython'",
            "mypy-zope>=1.0; platform_python_implementation == 'CPython'",
            "twisted[conch]>=23.10",
            # The docs build on CPython 3.10+ (not on PyPy 3.9, where tests/test_docs.py skips it).
            "sphinx>=8.0; python_version >= '3.10'",
            "myst-parser>=4.0; python_version >= '3.10'",
        ],
    },
    entry_points={"console_scripts": ["dmqctl = dmq.ctl:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Telephony",
    ],
)
