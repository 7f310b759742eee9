"""``kairos-autoscale``: the control loop. Collect the load, forecast it as quantiles, plan the pool
with the planner, and actuate the plan (the embedded pool or Kubernetes), on a wall clock or in the
simulator on a virtual one."""
