"""Faster training-time twins of two layers of the classifier, for the TensorFlow backend on CPU.

The training steps run a *twin* of the classifier built with these layers (same variables, same
order, same maths); the model that is saved, evaluated and exported always has Keras' own
``Dropout`` and ``Conv1D``, so every ``.keras`` file loads anywhere without crbatch.

Why (profile of one adversarial batch, reference network, TensorFlow 2.21, 2 cores):

* ``Dropout`` was 40 % of the CPU time. Keras draws one Philox float per element
  (``stateless_dropout``) and then selects. :class:`TrainingDropout` draws one Philox ``uint32``
  per *two* elements and compares each 16-bit half with ``round(rate·2¹⁶)``: the drop probability
  is ``rate`` to within 2⁻¹⁷ (0.2 → 0.199997), masks stay independent per element and seeded by
  the layer's own ``SeedGenerator`` (so resume and determinism work as before).
* ``Conv1D`` with kernel size 1 is a matrix product on the last axis; TensorFlow ran it as a 2-D
  convolution (expand, convolve, squeeze, and two convolution gradients), 20 % of the time.
  :class:`TrainingPointwiseConv1D` computes ``relu(x @ kernel[0] + bias)`` on the jets × slots rows
  as MatMul + BiasAdd + activation, which TensorFlow's graph optimiser fuses into one kernel (same
  kernel variable, shape ``(1, F, filters)``).

Together 1.3× the training-step rate on 2 cores (bench/RESULTS.md).

On any other backend the twins fall back to the parent layers' own code.
"""

from __future__ import annotations

import keras
from keras import layers


def _seed_int32(seed):
    """A ``SeedGenerator`` draw as the int32 pair TensorFlow's stateless ops take (as Keras does)."""
    import tensorflow as tf

    seed = tf.convert_to_tensor(seed)
    if seed.dtype == tf.int32:
        return seed
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)


class TrainingDropout(layers.Dropout):
    """``Dropout`` with 16-bit masks on TensorFlow (see the module note); Keras' own elsewhere."""

    def call(self, inputs, training=False):
        if not (training and self.rate > 0) or self.noise_shape is not None or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training)
        import tensorflow as tf

        seed = _seed_int32(self.seed_generator.next())
        shape = tf.shape(inputs)
        n = tf.size(inputs)
        bits = tf.random.stateless_uniform([(n + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
        halves = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:n]
        threshold = min(round(self.rate * 65536), 65535)
        keep = tf.reshape(halves >= threshold, shape)
        return inputs * (tf.cast(keep, inputs.dtype) * (1.0 / (1.0 - self.rate)))


class TrainingPointwiseConv1D(layers.Conv1D):
    """``Conv1D(kernel_size=1)`` as a matrix product on the last axis (TensorFlow); Keras' own elsewhere."""

    def call(self, inputs):
        pointwise = (
            self.kernel_size == (1,) and self.strides == (1,) and self.dilation_rate == (1,) and self.groups == 1
        )
        if keras.backend.backend() != "tensorflow" or not pointwise or self.data_format != "channels_last":
            return super().call(inputs)
        import tensorflow as tf

        # 2-D MatMul + BiasAdd + activation: the pattern TensorFlow's graph optimiser fuses into one kernel.
        shape = tf.shape(inputs)
        y = tf.matmul(tf.reshape(inputs, [-1, shape[-1]]), self.kernel[0])
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        if self.activation is not None:
            y = self.activation(y)
        return tf.reshape(y, tf.concat([shape[:-1], [self.filters]], 0))
