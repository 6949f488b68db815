"""amaformer.boards"""
