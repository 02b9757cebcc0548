"""tinytrain's C code generation: build targets (codegen.targets) and, later, the generator."""
