-- Argo CD health check for bpfshare.io BpfMap and BpfProgram (the same script for both kinds).
-- Install: deploy/argocd/argocd-cm.yaml; docs/gitops.md explains it. Tested under Lua 5.1 with
-- only what Argo CD gives a configured script (base and table libraries: no string library), by
-- tests/deploy/test_argocd_health.py.
--
-- It reads the cluster view that the controller (bpfshare controller) writes:
--   Degraded     Stalled is True: a selected node reports Error at the current generation
--   Healthy      Ready is True at the current generation: every selected node is Ready
--   Progressing  anything else: no status yet, the controller has not seen the current generation
--                (status.observedGeneration), nodes have not reported (Reconciling), deletion
local hs = {}

local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function text(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil then
    return c.reason
  end
  return ""
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the bpfshare controller to report on this resource"
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the bpfshare controller: status describes generation "
    .. tostring(status.observedGeneration) .. ", the resource is at generation " .. tostring(generation)
  return hs
end

local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
  return hs
end

local ready = condition(status.conditions, "Ready")
-- A condition of an older generation says nothing about this one.
if ready ~= nil and ready.status == "True"
    and (ready.observedGeneration == nil or generation == nil or ready.observedGeneration == generation) then
  hs.status = "Healthy"
  hs.message = text(ready)
  return hs
end

hs.status = "Progressing"
local reconciling = condition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = text(reconciling)
elseif ready ~= nil then
  hs.message = text(ready)
else
  hs.message = "Waiting for the bpfshare controller to set the Ready condition"
end
return hs
