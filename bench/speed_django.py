"""A Django JSON view with the default middleware for bench/speed.py: ``GET /`` -> 200 JSON.

One file: settings as ``startproject`` writes them (the seven default
middleware, the default contrib apps), ``DEBUG`` off, one URL, one
``JsonResponse`` view that touches neither the session nor the user, so no
database is opened.  Every server in the speed bench imports this very module
(``speed_django:app``).  Needs Django (bench/speed-requirements.txt).
"""

from __future__ import annotations

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-only-not-secret",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    USE_TZ=True,
)
django.setup()


def index(request: HttpRequest) -> JsonResponse:
    """A JSON object built from the request, like an API's smallest view."""
    return JsonResponse({"message": "hello", "path": request.path, "items": [1, 2, 3], "ok": True})


urlpatterns = [path("", index)]

from django.core.wsgi import get_wsgi_application  # noqa: E402  (after settings)

app = get_wsgi_application()
