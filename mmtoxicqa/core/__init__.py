"""The bottom layer: errors, atomic writes, hashing, paths and settings (every environment variable), rendering, image reading, the plug-in registry. Imports nothing else of the project."""
