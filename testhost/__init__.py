"""Disposable Debian test servers (podman containers running systemd and sshd).

See testhost/harness.py for the API and testhost/setup.sh for the machine setup.
"""
