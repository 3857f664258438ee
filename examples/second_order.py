"""First- and second-order gradients combined (the debugging seed's story).

The seed's ``train_step`` nests two ``tf.GradientTape``s: ``dl_dw`` is the
gradient of the loss, ``d2l_dw2`` the gradient of ``sum(dl_dw)`` (a
Hessian-vector product with ones). Mixed raw, the second-order term is orders
of magnitude larger and training goes nowhere; the seed's fix is to
L2-normalise each gradient tensor, weight them 0.2 (second order) and 0.8
(first order), and decay the learning rate (InverseTimeDecay). Here the nesting is ``value_and_grad``
inside ``value_and_grad``, so the same step runs on jax, tensorflow and torch.

    KERAS_BACKEND=torch python examples/second_order.py
"""

from __future__ import annotations

import keras
from keras import ops

import loops
from loops import Trainer


def _l2_normalize(g):
    """As tf.math.l2_normalize: g / sqrt(max(sum(g^2), 1e-12))."""
    return g / ops.sqrt(ops.maximum(ops.sum(ops.square(g)), 1e-12))


class SecondOrderTrainer(Trainer):
    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(model, **kwargs)
        self.second_order_norm = keras.metrics.Mean(name="d2_norm")

    def train_step(self, batch):
        x, y = batch
        variables = self.model.trainable_variables

        def loss_fn():
            y_pred = self.model(x, training=True)
            return self.compute_loss(x, y, y_pred), y_pred

        def first_order_sum():
            (loss, y_pred), dl_dw = self.value_and_grad(loss_fn, variables, has_aux=True)
            total = ops.sum(ops.stack([ops.sum(g) for g in dl_dw]))
            return total, (loss, y_pred, dl_dw)

        (_, (loss, y_pred, dl_dw)), d2l_dw2 = self.value_and_grad(first_order_sum, variables, has_aux=True)
        grads = [0.2 * _l2_normalize(g2) + 0.8 * _l2_normalize(g1) for g1, g2 in zip(dl_dw, d2l_dw2)]
        self.optimizer.apply(grads, variables)
        self.second_order_norm.update_state(loops.global_norm(d2l_dw2))
        self._loss_tracker.update_state(loss)
        return self.compute_metrics(x, y, y_pred)


def main(epochs: int = 20, verbose: int = 1, run_eagerly: bool = False) -> tuple[keras.callbacks.History, dict]:
    from examples._digits import load_digits_split

    x, y, xt, yt = load_digits_split()
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(10)])
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.1, decay_steps=25, decay_rate=0.1)
    trainer = SecondOrderTrainer(model, optimizer=keras.optimizers.SGD(schedule),
                                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                 metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                                 run_eagerly=run_eagerly)
    history = trainer.fit(x, y, batch_size=128, epochs=epochs, verbose=verbose)
    return history, trainer.evaluate(xt, yt, return_dict=True, verbose=0)


if __name__ == "__main__":
    history, result = main()
    print("test:", result)
