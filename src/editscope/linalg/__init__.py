"""The shared math of locate-and-edit methods, one function per paper equation."""
