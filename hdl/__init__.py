"""amaformer.hdl"""
