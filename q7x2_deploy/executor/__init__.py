"""Carrying out a Plan on the hosts: preflight, image delivery, phases, logs, status, down.

Everything here talks to hosts through `q7x2_deploy.transport.Transport` only.
"""
