"""The shared contract: lake layout, link paths, result lines, schemas, dates and names.

Standard library only: DAG files, plugins and every layer of ``jobs`` may import it.
"""
