"""The numbers in the example configurations agree with each other and with graceserve.

A Kubernetes cluster is not available to the tests, so ``examples/kubernetes.yaml`` is
checked as an operator would read it: the kubelet's SIGKILL comes after graceserve's
drain delay plus grace; the readiness probe takes a stopping pod out of rotation
within the drain delay but does not flap on one slow answer; a read-only root
filesystem still has a writable ``/tmp``.  ``examples/haproxy.cfg`` waits for a
response at least as long as the ``--grace`` its header runs the replicas with.
(The files themselves run in tests/test_load_balancers.py and tests/test_systemd_unit.py.)
"""

from __future__ import annotations

import re

from testsupport.process import REPO

EXAMPLES = REPO / "examples"


def number(text: str, pattern: str) -> float:
    found = re.findall(pattern, text, re.MULTILINE)
    assert len(found) == 1, (pattern, found)
    return float(found[0])


def test_kubernetes_timeline_and_probe() -> None:
    text = (EXAMPLES / "kubernetes.yaml").read_text()
    drain_delay = number(text, r'name: GRACESERVE_DRAIN_DELAY\n\s+value: "([\d.]+)"')
    grace = number(text, r'name: GRACESERVE_GRACE\n\s+value: "([\d.]+)"')
    kill_after = number(text, r"terminationGracePeriodSeconds: (\d+)")
    assert kill_after >= drain_delay + grace + 5  # graceserve, not SIGKILL, decides

    probe = text[text.index("readinessProbe:") :]
    probe = probe[: probe.index("successThreshold")]
    assert "path: /healthz" in probe
    period = number(probe, r"periodSeconds: (\d+)")
    timeout = number(probe, r"timeoutSeconds: (\d+)")
    failures = number(probe, r"failureThreshold: (\d+)")
    assert failures >= 2  # one slow answer from a busy pod does not take it out
    assert timeout >= 2
    assert failures * period + timeout <= drain_delay  # out of rotation before the drain
    assert "livenessProbe:\n" not in text.replace("# ", "")  # /healthz fails on purpose


def test_kubernetes_read_only_root_has_a_writable_tmp() -> None:
    text = (EXAMPLES / "kubernetes.yaml").read_text()
    assert "readOnlyRootFilesystem: true" in text
    mount = re.search(r"volumeMounts:\n\s+- name: (\S+)\n\s+mountPath: /tmp\n", text)
    assert mount is not None
    assert re.search(rf"volumes:\n\s+- name: {mount[1]}\n\s+emptyDir:\n\s+sizeLimit: \S+", text)
    assert "kind: PodDisruptionBudget" in text


def test_haproxy_waits_for_a_response_as_long_as_the_grace() -> None:
    text = (EXAMPLES / "haproxy.cfg").read_text()
    graces = {
        float(g) for g in re.findall(r"^#   python -m graceserve .*--grace (\d+) &$", text, re.M)
    }
    assert len(graces) == 1, graces  # the three replicas of the header
    grace = graces.pop()
    server_timeout = number(text, r"^\s+timeout server (\d+)s$")
    assert server_timeout >= grace
