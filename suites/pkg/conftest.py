# The package under test lives next to this file: pytest's default import mode puts this
# directory on sys.path, so `import sysfeat` works on the controller and inside each target.
