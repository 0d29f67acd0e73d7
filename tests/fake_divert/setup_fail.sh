# shellcheck shell=bash
# A setup script that fails, as asetup does when CVMFS is not reachable.
echo "setup_fail.sh: release not found" >&2
return 1
