import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
os.environ.setdefault("DISTILLERY_PROCESS_ROLE", "web")
# The web process never loads torch models; cap BLAS/OpenMP pools in case a library imports numpy/torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
