# shellcheck shell=bash
# Fake AnalysisBase release setup: what produce_ntuple.py checks to know it runs "in the release".
export FAKE_RELEASE_SETUP=1
echo "fake AnalysisBase release set up"
