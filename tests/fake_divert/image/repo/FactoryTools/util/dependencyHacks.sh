# shellcheck shell=bash
# Fake of DiVertAnalysis's FactoryTools/util/dependencyHacks.sh: the image build sources it from FactoryTools.
[ -d util ] || { echo "dependencyHacks.sh: not run from FactoryTools" >&2; return 1; }
echo "fake dependency hacks applied"
