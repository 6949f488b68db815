"""amaformer.host"""
