#!/usr/bin/env bash
echo "make vm-test: the VM runner is not built yet" >&2
exit 2
