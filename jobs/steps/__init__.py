"""One module per CLI step: read (storage), call pure logic (ml, quality), write (storage).

Steps never import other steps; what two steps share lives in a lower layer.
"""
