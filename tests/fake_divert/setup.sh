# shellcheck shell=bash
# Sourced by `crbatch convert xaod` before the fake DiVertAnalysis (as a release's setup.sh would be):
# the fake records FAKE_DIVERT_SETUP, so tests see that setup ran in the same shell as the command.
export FAKE_DIVERT_SETUP="sourced ${BASH_SOURCE[0]##*/}"
