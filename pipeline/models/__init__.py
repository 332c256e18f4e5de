"""Neural network modules: the frozen FAN backbone (`fan`), the trainable heads and the label prior.

Submodules are imported explicitly (`from pipeline.models.fan import FrozenFAN`) so importing this
package stays cheap.
"""
