-- Argo CD health of a secmetrics.io MetricPolicy (docs/argocd-health.md).
-- Health says whether the policy works, not whether it complies: a policy the operator
-- reconciles is Healthy whether Compliant, NonCompliant or Unknown, with its state, score and
-- remediations in the message. Ready=False (invalid selector, metrics not found, webhook not
-- allowed) is Degraded with the condition's reason and message. Until the operator has
-- reconciled the current generation it is Progressing. Lua 5.1, as Argo CD runs it.
local hs = {status = "Progressing", message = "Waiting for the secmetrics operator to reconcile the policy"}
local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil then
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the secmetrics operator to reconcile generation " .. generation
  return hs
end
local ready = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
if ready == nil or ready.status == "Unknown" then
  return hs
end
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  local state = status.state or "Unknown"
  if status.score ~= nil then
    state = state .. " (score " .. status.score .. "%)"
  end
  hs.message = state .. ": " .. (ready.message or "")
else
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
end
return hs
