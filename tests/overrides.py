"""Experiment overrides the tests share."""

# Model Garden's trainer without tf.function: for tests of plumbing (entry
# points, quickstarts, benchmarks) a few eager steps cost less than tracing
# the loop. Each task's compiled loop runs in at least one other test.
EAGER = ("trainer.train_tf_function=false,trainer.eval_tf_function=false,"
         "trainer.train_tf_while_loop=false")
