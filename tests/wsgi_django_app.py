# mypy: disable-error-code="import-untyped,untyped-decorator"
# (Django ships no type information.)
"""A one-module Django project for the WSGI tests: settings, URLs and views in one place.

``application`` is what a project's ``wsgi.py`` would export.  Settings are
configured here (no settings module), once per process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="graceserve-tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        DATA_UPLOAD_MAX_MEMORY_SIZE=4 * 1024 * 1024,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.core.wsgi import get_wsgi_application
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def hello(request: HttpRequest, name: str) -> HttpResponse:
    return HttpResponse(f"hello {name} {request.GET.get('q', '')}", content_type="text/plain")


@csrf_exempt
def form(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{request.method} {request.POST.get('a')} {request.POST.get('b')}")


@csrf_exempt
def echo_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"got": json.loads(request.body)})


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    handle = request.FILES["file"]
    data = handle.read()
    return JsonResponse({"name": handle.name, "size": len(data), "sum": sum(data) % 65521})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def parts() -> Iterator[bytes]:
        for i in range(5):
            yield f"part {i}\n".encode()

    return StreamingHttpResponse(parts(), content_type="text/plain")


def cookies(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(f"seen={request.COOKIES.get('seen', '')}")
    response.set_cookie("seen", "yes")
    return response


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("django view failed")


urlpatterns = [
    path("hello/<str:name>", hello),
    path("form", form),
    path("json", echo_json),
    path("upload", upload),
    path("stream", stream),
    path("cookies", cookies),
    path("boom", boom),
]

application = get_wsgi_application()
