"""Starting a run: the recipes' ``launch`` entry, the checks made before any rank starts, console quieting."""
