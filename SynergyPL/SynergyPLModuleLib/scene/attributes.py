"""What the panel remembers in the scene: the names of its node attributes and segment tag.

Nothing but names (saved with the scene, so a reopened scene restores the panel's state). In: none.
Out: the ``SynergyPL.*`` attribute names, the segment tag ``SynergyPL.LabelValue`` and the roles of
the volumes the panel makes that are not images to label.
"""

CASE_ID_ATTRIBUTE = "SynergyPL.CaseId"
CASE_SERVER_ATTRIBUTE = "SynergyPL.CaseServer"
LABEL_VERSION_ATTRIBUTE = "SynergyPL.LabelVersion"
MODEL_VERSION_ATTRIBUTE = "SynergyPL.ModelVersion"
ROLE_ATTRIBUTE = "SynergyPL.Role"
SOURCE_VOLUME_ATTRIBUTE = "SynergyPL.SourceVolumeID"
REGIONS_ATTRIBUTE = "SynergyPL.Regions"
# Tag on a segment: the project label value it stands for.
LABEL_VALUE_TAG = "SynergyPL.LabelValue"
# Volumes the panel makes that are not images to label (never offered as cases).
NON_CASE_ROLES = ("heatmap", "regionmap")
