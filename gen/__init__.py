"""amaformer.gen"""
