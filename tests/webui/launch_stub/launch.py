"""Stand-in of the webui's launch module (launch_utils): records run_pip calls."""

import importlib.util

calls = []


def is_installed(package):
    return importlib.util.find_spec(package) is not None


def run_pip(command, desc=None, live=False):
    calls.append((command, desc))
    return ""


def git_clone(url, dir, name, commithash=None):
    calls.append((f"git clone {url} {dir} @{commithash}", name))
